"""eXplaining to Learn (eX2L) as a DomainBed plugin."""

__version__ = "0.1.0"  # both distributions (setup.py, packaging/plugin/setup.py) read it
