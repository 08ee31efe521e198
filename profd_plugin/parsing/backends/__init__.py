"""Pose backends: one module each, registered with ``profd_plugin.parsing.base.register_backend``."""
