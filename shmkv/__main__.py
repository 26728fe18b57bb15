"""`python -m shmkv ...`: the `shmkv` command, for when only the interpreter is known (the node
starts its snapshot child this way)."""

from .cli import main

main()
