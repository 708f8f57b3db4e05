"""Host adapters ("sources") for the kernel's memory interfaces: KSM, UKSM, zswap, swap,
meminfo and PSI. See ``base`` for the contract and ``sources.HostAdapter`` for the whole host."""
