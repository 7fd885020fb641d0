"""The KeyService: attested key release, access control and the audit log.

Model owners give it model keys, users give it request keys, owners grant users access under a
runtime policy, and it releases keys only to a runtime whose attestation evidence satisfies
that policy, HPKE-wrapped to the runtime's fresh public key.  See ``docs/keyservice.md``.
"""

__all__: list[str] = []
