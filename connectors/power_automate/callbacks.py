"""POSTing to a subscriber's callback URL without letting that URL reach anything it should not.

The guard, at every delivery (DNS answers change):

1. the URL is ``https``, has no user info, and its host (and port, 443 unless the pattern names
   one) matches `api.callback_hosts`;
2. the host is resolved once, and every address it resolves to must be public (not private,
   loopback, link-local, multicast, reserved, shared, unspecified, nor an IPv6 form of one of
   those) unless `api.callback_allow_private_addresses` is set (tests only);
3. the connection goes to a vetted address, with TLS server name and Host header of the name,
   so a DNS answer that changes between the check and the connect cannot redirect it;
4. redirects are never followed: a 3xx is a failed delivery.

The URL carries the flow's signature: it is never logged, and no error message here contains it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError

from plugin.config import Config

MAX_URL_CHARS = 4096
MAX_RESPONSE_BYTES = 64 * 1024

# host, port -> the addresses it resolves to (strings)
Resolver = Callable[[str, int], Sequence[str]]

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))

# urllib3 logs request lines (with the query: the flow's signature) at DEBUG; while this thread
# delivers to a callback, its records are dropped, whatever the logging configuration.
_delivering = threading.local()


class _QuietWhileDelivering(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_delivering, "active", False)


_QUIET = _QuietWhileDelivering()
for _name in ("urllib3.connectionpool", "urllib3.connection", "urllib3.response", "urllib3.util.retry"):
    logging.getLogger(_name).addFilter(_QUIET)


class CallbackRefused(Exception):
    """The callback may not be called (policy): a permanent failure. `reason` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class CallbackUnreachable(Exception):
    """The callback could not be reached this time (DNS, connection, TLS, timeout): retry later."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class CallbackPolicy:
    """Where callbacks may go and how they are called."""

    hosts: tuple[str, ...]
    allow_private_addresses: bool = False
    ca_bundle: str = ""
    timeout_seconds: float = 10.0

    @classmethod
    def from_config(cls, config: Config) -> CallbackPolicy:
        """The policy `api.callback_*` describes."""
        api = config.api
        return cls(
            hosts=tuple(api.callback_hosts),
            allow_private_addresses=api.callback_allow_private_addresses,
            ca_bundle=api.callback_ca_bundle,
            timeout_seconds=api.callback_timeout_seconds,
        )


@dataclass(frozen=True)
class Target:
    """A checked callback URL, split into what the connection needs."""

    host: str  # lower case, no trailing dot
    port: int
    path: str  # path and query: the part that carries the signature

    @property
    def host_header(self) -> str:
        """The Host header (the name, never the address connected to)."""
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == 443 else f"{name}:{self.port}"


def check_url(url: str, policy: CallbackPolicy) -> Target:
    """Static checks (no DNS): https, no user info, host allowed; an IP literal must be public."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise CallbackRefused("bad_url", f"callback_url must be a URL of at most {MAX_URL_CHARS} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):  # CR, LF, NUL...: header injection
        raise CallbackRefused("bad_url", "callback_url must not contain control characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port or 443
    except ValueError as exc:
        raise CallbackRefused("bad_url", "callback_url is not a valid URL") from exc
    if parts.scheme.lower() != "https":
        raise CallbackRefused("not_https", "callback_url must be an https:// URL")
    if parts.username is not None or parts.password is not None:
        raise CallbackRefused("bad_url", "callback_url must not carry user info")
    host = (parts.hostname or "").rstrip(".")
    if not host or not host.isascii() or any(c.isspace() for c in host):
        raise CallbackRefused("bad_url", "callback_url has no usable host name")
    if not host_allowed(host, port, policy.hosts):
        raise CallbackRefused("host_not_allowed", "callback_url's host is not in api.callback_hosts")
    literal = _ip_literal(host)
    if literal is not None and not policy.allow_private_addresses and not is_public_address(literal):
        raise CallbackRefused("not_public", "callback_url points at a non-public address")
    path = parts.path or "/"
    return Target(host=host, port=port, path=f"{path}?{parts.query}" if parts.query else path)


def host_allowed(host: str, port: int, patterns: Sequence[str]) -> bool:
    """Whether `host:port` matches one of the patterns ("name", "*.domain", each with ":port" or 443)."""
    is_literal = _ip_literal(host) is not None
    for pattern in patterns:
        name, _, pattern_port = pattern.lower().partition(":")
        if int(pattern_port or 443) != port:
            continue
        if name.startswith("*."):
            if not is_literal and host.endswith(name[1:]):
                return True
        elif host == name:
            return True
    return False


def is_public_address(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is globally routable: not private, loopback, link-local, multicast, ..."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and any(ip in net for net in _NAT64):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
        if ip.teredo is not None or ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host`."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def vetted_addresses(target: Target, policy: CallbackPolicy, resolver: Resolver) -> list[str]:
    """Resolve once; refuse if ANY address is not public (unless relaxed). Returns them, in order."""
    try:
        addresses = list(dict.fromkeys(a.split("%", 1)[0] for a in resolver(target.host, target.port)))
    except (OSError, UnicodeError) as exc:
        raise CallbackUnreachable(
            "dns_failed", f"cannot resolve the callback host ({type(exc).__name__})"
        ) from exc
    if not addresses:
        raise CallbackUnreachable("dns_failed", "the callback host resolves to no address")
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError as exc:
            raise CallbackUnreachable("dns_failed", "the resolver returned something not an address") from exc
    if not policy.allow_private_addresses and not all(is_public_address(a) for a in addresses):
        raise CallbackRefused("not_public", "the callback host resolves to a non-public address")
    return addresses


def post_json(
    url: str,
    body: bytes,
    policy: CallbackPolicy,
    *,
    headers: Mapping[str, str] | None = None,
    resolver: Resolver = system_resolver,
) -> int:
    """POST `body` to the callback; return the HTTP status (redirects are returned, not followed).

    Raises CallbackRefused (never retry) or CallbackUnreachable (retry later).
    """
    target = check_url(url, policy)
    addresses = vetted_addresses(target, policy, resolver)
    _delivering.active = True
    try:
        return _post(target, addresses, body, policy, headers or {})
    finally:
        _delivering.active = False


def _post(
    target: Target, addresses: Sequence[str], body: bytes, policy: CallbackPolicy, headers: Mapping[str, str]
) -> int:
    context = ssl.create_default_context(cafile=policy.ca_bundle or None)
    timeout = urllib3.Timeout(connect=min(5.0, policy.timeout_seconds), read=policy.timeout_seconds)
    request_headers = {
        "Host": target.host_header,
        "Content-Type": "application/json",
        "User-Agent": "OnRecord",
        **headers,
    }
    last: Exception | None = None
    for address in addresses:  # each one vetted; the next only if this one cannot be connected to
        pool = urllib3.HTTPSConnectionPool(
            address,
            target.port,
            timeout=timeout,
            retries=False,
            ssl_context=context,
            server_hostname=target.host,
            assert_hostname=target.host,
        )
        try:
            response = pool.urlopen(
                "POST",
                target.path,
                body=body,
                headers=request_headers,
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
            )
            with contextlib.suppress(HTTPError):
                response.read(MAX_RESPONSE_BYTES)  # drain a little; the body is not used
            response.release_conn()
            return int(response.status)
        except (NewConnectionError, ConnectTimeoutError) as exc:
            last = exc
        except HTTPError as exc:  # TLS, read timeout, protocol: the name of the error, never its text
            raise CallbackUnreachable("unreachable", f"callback call failed ({type(exc).__name__})") from None
        finally:
            pool.close()
    name = type(last).__name__ if last else "no address"
    raise CallbackUnreachable("unreachable", f"cannot connect to the callback host ({name})") from None


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
