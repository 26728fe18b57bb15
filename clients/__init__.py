"""shmkv.clients: the Cache API over ZeroMQ for processes on other hosts, and subscribers.
Installed as `shmkv.clients`.

    from shmkv.clients import RemoteCache
    cache = RemoteCache("tcp://127.0.0.1:7370", timeout_s=1.0, retries=2)
"""

from .remote import DEFAULT_ENDPOINT, RemoteCache

__all__ = ["DEFAULT_ENDPOINT", "RemoteCache"]
