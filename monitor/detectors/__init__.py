"""Empty until the detectors land."""
