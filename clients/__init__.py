"""shmkv.clients: the Cache API over ZeroMQ for processes on other hosts, and subscribers.
Installed as `shmkv.clients`."""
