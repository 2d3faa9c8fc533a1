"""labtui: a terminal lab for several LLMs sharing one workstation."""

__version__ = "0.1.0"
