"""Provenance: signed, chained statements of where each governed value came from, in an append-only log.

canonical  RFC 8785 JSON and type-aware values      channels   which channel a change came through
keys       Ed25519 keys, JWK set, rotation           dsse       DSSE envelopes (PAE, Ed25519)
statement  in-toto Statement v1 (PROV predicate)     rule       the pure provenance rule
merkle     RFC 6962 hashing and inclusion proofs     checkpoint signed-note checkpoints
log        the sequencer and the stored log          verify     verification with public keys only
api        the HTTP endpoints
"""
