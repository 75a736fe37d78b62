"""Long fault runs that are not yet part of CI: the short chaos soak and the three-node cluster tests."""
