"""The mesh's services, one package each. A service never imports another service."""
