"""shmkv.clients: the Cache API over ZeroMQ for processes on other hosts, and subscribers.
Installed as `shmkv.clients`.

    from shmkv.clients import RemoteCache
    cache = RemoteCache("tcp://127.0.0.1:7370", timeout_s=1.0, retries=2)
    cache.publish("news", b"hello")

    from shmkv.clients import Subscriber
    with Subscriber("tcp://127.0.0.1:7371") as sub:
        sub.subscribe("news")
        message = sub.get_message(timeout_s=1.0)
"""

from .pipeline import Pipeline, RemoteFuture
from .remote import DEFAULT_ENDPOINT, RemoteCache
from .subscribe import DEFAULT_PUB_ENDPOINT, Message, Subscriber

__all__ = ["DEFAULT_ENDPOINT", "DEFAULT_PUB_ENDPOINT", "Message", "Pipeline", "RemoteCache",
           "RemoteFuture", "Subscriber"]
