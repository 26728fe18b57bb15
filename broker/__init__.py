"""shmkv.broker: the ZeroMQ node around one region (remote access, pub/sub, replication,
persistence). Installed as `shmkv.broker`; see the node issue for what is being built here."""
