"""Clean-room, CLI- and file-compatible reimplementation of the DomainBed harness."""
