"""`stagesync init` against a seeded production: its proposal passes `check` as written, and
an existing file is never overwritten."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pymongo import ASCENDING, MongoClient

from tests.support.backends import MongoPair
from tests.support.pipeline import unique

STAGESYNC = str(Path(sys.executable).parent / "stagesync")


def _stagesync(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STAGESYNC, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})


def test_init_proposes_a_configuration_that_passes_check_and_never_overwrites(
        mongo_pair: MongoPair, redis_url: str, tmp_path: Path) -> None:
    database = unique("shop")
    production: MongoClient = MongoClient(mongo_pair.prod_uri)
    try:
        shop = production[database]
        shop.users.create_index([("email", ASCENDING)], unique=True)
        shop.users.insert_many([{"email": f"user{i}@example.com", "name": f"Ann Berg{i}",
                                 "phone": f"+47 9{i:07d}", "tier": "gold"} for i in range(40)])
        shop.orders.create_index([("userEmail", ASCENDING), ("orderNo", ASCENDING)],
                                 unique=True)
        shop.orders.insert_many([{"userEmail": f"user{i % 40}@example.com", "orderNo": i,
                                  "total": i * 1.5, "status": "paid"} for i in range(80)])
        shop.events.insert_many([{"kind": "click"} for _ in range(5)])  # no key to propose
        path = tmp_path / "stagesync.yaml"
        made = _stagesync("init", "--prod-uri", mongo_pair.prod_uri, "--staging-uri",
                          mongo_pair.staging_uri, "--redis-url", redis_url,
                          "--database", database, cwd=tmp_path)
        assert made.returncode == 0, made.stdout + made.stderr
        text = path.read_text()
        assert 'business_key: ["userEmail", "orderNo"]   # unique index' in text
        assert 'business_key: ["email"]   # unique index' in text
        assert '"email": "hash"' in text and '"name": "fake:name"' in text
        assert "# - name: events" in text  # no business key: left for the user
        assert "@example.com" not in text  # names and rules only, never a value

        checked = _stagesync("check", "--config", str(path), cwd=tmp_path)
        assert checked.returncode == 0, checked.stdout + checked.stderr

        again = _stagesync("init", "--prod-uri", mongo_pair.prod_uri, cwd=tmp_path)
        assert again.returncode == 2
        assert "left as it is" in again.stdout + again.stderr
        assert path.read_text() == text
    finally:
        production.drop_database(database)
        production.close()


def test_init_without_production_writes_an_example_that_loads(tmp_path: Path) -> None:
    made = _stagesync("init", "--prod-uri", "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300",
                      cwd=tmp_path)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "production not reached" in made.stdout
    from stagesync.settings import load_settings

    settings = load_settings(tmp_path / "stagesync.yaml")
    assert [c.name for c in settings.collections] == ["orders"]
