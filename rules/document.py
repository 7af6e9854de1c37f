"""The one type every room passes around: a BSON document as pymongo hands it over."""

from __future__ import annotations

from typing import Any

Document = dict[str, Any]
