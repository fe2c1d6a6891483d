"""The hospital's PACS over DICOMweb: configured endpoints, a client (QIDO-RS searches, WADO-RS retrieval,
STOW-RS storage) built on dicomweb-client, and opaque handles so that no UID reaches a browser.

Every failure of a PACS (unreachable, slow, wrong credentials, a refusal) is a
:class:`~busi_web.errors.UserError` that names the endpoint and the fix; no identifier is ever put in one.
"""
