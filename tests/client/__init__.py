"""Client tests: the library against the emulator and Azurite, and shaped faults from `_stub.StubServer`."""
