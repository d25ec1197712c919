"""sollol_serve: SOLLOL rebuilt as a Ray Serve application."""

__version__ = "0.1.0"
