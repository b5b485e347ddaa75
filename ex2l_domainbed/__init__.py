"""eXplaining to Learn (eX2L) as a DomainBed plugin."""
