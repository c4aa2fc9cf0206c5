"""The emulator's Metadata API answers simple-salesforce's deploy() and checkDeployStatus() as
Salesforce does: SOAP bodies, session in the SOAP header, faults, componentFailures."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator

import jwt
import pytest
import requests
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import SalesforceGeneralError

from tests.sfemu import KeyPair, SalesforceEmulator, make_consumer_keypair

CLIENT_ID = "3MVG9emulatorMetadataTests"
MD = "http://soap.sforce.com/2006/04/metadata"
PACKAGE = f"""<?xml version="1.0" encoding="UTF-8"?>
<Package xmlns="{MD}">
    <types><members>Account.Tier__c</members><name>CustomField</name></types>
    <types><members>Audit__c</members><name>CustomObject</name></types>
    <version>62.0</version>
</Package>
"""
ACCOUNT = f"""<?xml version="1.0" encoding="UTF-8"?>
<CustomObject xmlns="{MD}">
    <fields><fullName>Tier__c</fullName><label>Tier</label><length>10</length><type>Text</type></fields>
</CustomObject>
"""
AUDIT = f"""<?xml version="1.0" encoding="UTF-8"?>
<CustomObject xmlns="{MD}">
    <fields><fullName>Key__c</fullName><externalId>true</externalId><label>Key</label><length>40</length>
    <type>Text</type><unique>true</unique></fields>
    <label>Audit</label><pluralLabel>Audits</pluralLabel>
</CustomObject>
"""


def package(files: dict[str, str]) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    buffer.seek(0)
    return buffer


@pytest.fixture(scope="module")
def keypair() -> KeyPair:
    return make_consumer_keypair()


@pytest.fixture
def emu(keypair: KeyPair) -> Iterator[SalesforceEmulator]:
    with SalesforceEmulator() as emulator:
        emulator.register_consumer(CLIENT_ID, certificate_pem=keypair.certificate_pem)
        emulator.deploy_polls = 1
        yield emulator
    assert emulator.errors == []


@pytest.fixture
def sf(emu: SalesforceEmulator, keypair: KeyPair) -> Salesforce:
    claims = {"iss": CLIENT_ID, "sub": emu.username, "aud": emu.base_url, "exp": int(time.time()) + 180}
    assertion = jwt.encode(claims, keypair.private_key_pem, algorithm="RS256")
    grant = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
    token = requests.post(f"{emu.base_url}/services/oauth2/token", data=grant, verify=emu.ca_path, timeout=5)
    return Salesforce(
        instance_url=token.json()["instance_url"],
        session_id=token.json()["access_token"],
        version="62.0",
        session=emu.http_session(),
    )


def deploy(sf: Salesforce, files: dict[str, str]) -> str:
    """Start a deploy of these files; its id."""
    async_id = sf.deploy(package(files), sandbox=False)["asyncId"]
    assert async_id is not None
    return async_id


def test_deploy_is_queued_then_in_progress_then_succeeded(emu: SalesforceEmulator, sf: Salesforce) -> None:
    files = {"package.xml": PACKAGE, "objects/Account.object": ACCOUNT, "objects/Audit__c.object": AUDIT}

    started = sf.deploy(package(files), sandbox=False)
    async_id = str(started["asyncId"])
    first = sf.checkDeployStatus(async_id)
    second = sf.checkDeployStatus(async_id)

    assert started["state"] == "Queued" and async_id.startswith("0Af")
    assert first["state"] == "InProgress"
    assert second["state"] == "Succeeded"
    assert second["deployment_detail"] == {
        "total_count": "2",
        "failed_count": "0",
        "deployed_count": "2",
        "errors": [],
    }
    (deployment,) = emu.deployments
    assert deployment.files["objects/Audit__c.object"] == AUDIT.encode()
    assert deployment.options["singlePackage"] == "True" and deployment.options["rollbackOnError"] == "True"
    assert [c.path.split("/m/")[1] for c in emu.calls if "/Soap/m/" in c.path] == [
        "62.0/deployRequest",
        f"62.0/deployRequest/{async_id}",
        f"62.0/deployRequest/{async_id}",
    ]


def test_deployed_object_is_known_with_its_external_id(emu: SalesforceEmulator, sf: Salesforce) -> None:
    files = {"package.xml": PACKAGE, "objects/Account.object": ACCOUNT, "objects/Audit__c.object": AUDIT}
    sf.deploy(package(files), sandbox=False)

    created = sf.restful("sobjects/Audit__c/Key__c/k-1", method="PATCH", json={})

    assert (
        created is not None and created["created"] is True and emu.records("Audit__c")[0]["Key__c"] == "k-1"
    )


def test_member_missing_from_its_file_fails_the_deploy(emu: SalesforceEmulator, sf: Salesforce) -> None:
    account_without_field = ACCOUNT.replace("Tier__c", "Other__c")
    files = {
        "package.xml": PACKAGE,
        "objects/Account.object": account_without_field,
        "objects/Audit__c.object": AUDIT,
    }
    emu.deploy_polls = 0

    status = sf.checkDeployStatus(deploy(sf, files))

    assert status["state"] == "Failed"
    detail = status["deployment_detail"]
    assert isinstance(detail, dict) and detail["failed_count"] == "1"
    assert detail["errors"] == [
        {
            "type": "CustomField",
            "file": "objects/Account.object",
            "status": "Error",
            "message": "An object 'Account.Tier__c' of type CustomField was named in package.xml, "
            "but was not found in zipped directory",
        }
    ]
    assert emu.records("Audit__c") == []  # rolled back: nothing of it exists


def test_zip_without_package_xml_at_its_root_fails(emu: SalesforceEmulator, sf: Salesforce) -> None:
    emu.deploy_polls = 0
    files = {"src/package.xml": PACKAGE, "src/objects/Audit__c.object": AUDIT}

    status = sf.checkDeployStatus(deploy(sf, files))

    assert status["state"] == "Failed"


def test_invalid_session_is_a_soap_fault_with_http_500(emu: SalesforceEmulator, sf: Salesforce) -> None:
    emu.expire_sessions()

    with pytest.raises(SalesforceGeneralError) as caught:
        sf.deploy(package({"package.xml": PACKAGE}), sandbox=True)

    assert caught.value.status == 500
    assert "<faultcode>sf:INVALID_SESSION_ID</faultcode>" in str(caught.value.content)
    assert emu.deployments == []


def test_deploy_calls_count_against_the_api_limit(emu: SalesforceEmulator, sf: Salesforce) -> None:
    before, _ = emu.api_usage

    sf.checkDeployStatus(deploy(sf, {"package.xml": PACKAGE}))

    assert emu.api_usage[0] == before + 2
