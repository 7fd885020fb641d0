"""sealserve: serverless inference where only an attested runtime sees plaintext.

A first inference, as a user: :class:`sealserve.client.User`.  Every resource sealserve
gives you (clients, stores, servers) is opened once, used, and closed, and says where it is
in that lifecycle with :class:`ResourceState`.
"""

from sealserve._resource import ResourceState, ResourceStateError

__version__ = "0.1.0"

__all__ = ["ResourceState", "ResourceStateError", "__version__"]
