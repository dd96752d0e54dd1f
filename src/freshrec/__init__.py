"""freshrec: a real-time recommendation system after ByteDance's Monolith.

Collisionless embedding tables, an online joiner, online training, touched-key parameter
sync and a model server, in one pip-installable package.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
