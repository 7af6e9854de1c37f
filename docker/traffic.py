"""Production traffic for the docker-compose setup (profile `traffic`).

Inserts, updates and deletes documents in `orders` and `users` of one database on the compose
*production* replica set, at a steady rate, then stops by itself:

    TRAFFIC_PROD_URI   production to write to
                       (default mongodb://prod-mongo:27017/?replicaSet=rs-prod)
    TRAFFIC_DATABASE   database holding `orders` and `users` (default shop)
    TRAFFIC_RATE       operations per second, 0.1 to 2000 (default 20)
    TRAFFIC_SECONDS    how long to run, 1 to 86400 (default 300)
    TRAFFIC_SEED       optional seed for a reproducible sequence of operations

Values outside the bounds are clamped (with a warning), so a typo cannot flood the demo. The
data is fake and looks like what the example configuration masks: emails, names, phones and
addresses, plus fields that are sometimes removed (`$unset`) so the sync's field ownership shows.
SIGTERM or Ctrl-C stops it early; either way it prints a summary and exits 0.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

DEFAULT_URI = "mongodb://prod-mongo:27017/?replicaSet=rs-prod"
RATE_BOUNDS = (0.1, 2000.0)
SECONDS_BOUNDS = (1.0, 86_400.0)
KNOWN_KEYS_LOADED = 5_000  # existing documents picked up at start, so restarts update them too
REPORT_EVERY_SECONDS = 10.0

FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus", "Radia",
               "Dennis", "Frances", "John", "Katherine", "Tim", "Hedy", "Donald")
LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Hamilton",
              "Torvalds", "Perlman", "Ritchie", "Allen", "Backus", "Johnson", "Berners-Lee")
CITIES = (("Lyon", "FR"), ("Leeds", "GB"), ("Porto", "PT"), ("Graz", "AT"), ("Turku", "FI"),
          ("Austin", "US"), ("Osaka", "JP"), ("Cork", "IE"))
STREETS = ("Main Street", "Station Road", "Rue de la Paix", "Elm Avenue", "Harbour Lane")
SKUS = ("BOOK-001", "MUG-002", "SHIRT-003", "LAMP-004", "PEN-005", "BAG-006", "CAP-007")
PLANS = ("free", "pro", "team", "enterprise")
ORDER_STATUSES = ("placed", "paid", "packed", "shipped", "delivered")


def bounded(name: str, default: float, low: float, high: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"traffic: {name}={raw!r} is not a number") from None
    if value != value or not low <= value <= high:  # NaN, or out of bounds
        clamped = low if value != value else min(max(value, low), high)
        print(f"traffic: {name}={raw} is outside [{low:g}, {high:g}]; using {clamped:g}",
              file=sys.stderr, flush=True)
        return clamped
    return value


class Traffic:
    """One run of generated traffic; keeps the business keys it knows so it can update them."""

    def __init__(self, database: Any, rng: random.Random) -> None:
        self.orders: Collection = database["orders"]
        self.users: Collection = database["users"]
        self.rng = rng
        self.run = format(int(time.time()), "x")
        self.sequence = 0
        self.emails: list[str] = []
        self.order_numbers: list[str] = []
        self.done: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.operations: list[tuple[Callable[[], None], int]] = [
            (self.insert_order, 30), (self.update_order, 30), (self.delete_order, 8),
            (self.insert_user, 12), (self.update_user, 14), (self.delete_user, 6),
        ]

    def load_known_keys(self) -> None:
        for user in self.users.find({}, {"email": 1}).limit(KNOWN_KEYS_LOADED):
            if isinstance(user.get("email"), str):
                self.emails.append(user["email"])
        for order in self.orders.find({}, {"orderNumber": 1}).limit(KNOWN_KEYS_LOADED):
            if isinstance(order.get("orderNumber"), str):
                self.order_numbers.append(order["orderNumber"])

    def step(self) -> None:
        functions = [function for function, _ in self.operations]
        weights = [weight for _, weight in self.operations]
        operation = self.rng.choices(functions, weights)[0]
        try:
            operation()
            self.done[operation.__name__] += 1
        except PyMongoError as error:  # keep going: production hiccups are part of the demo
            self.errors[type(error).__name__] += 1

    # Users ------------------------------------------------------------------------------------

    def insert_user(self) -> None:
        email = self._new_email()
        self.users.insert_one({
            "email": email,
            "name": self._name(),
            "phone": f"+1 555 01{self.rng.randrange(100):02d}",
            "address": self._address(),
            "birthDate": datetime(1960, 1, 1, tzinfo=UTC)
            + timedelta(days=self.rng.randrange(365 * 45)),
            "plan": self.rng.choice(PLANS),
            "notes": "prefers email contact",
            "createdAt": now(),
            "updatedAt": now(),
        })
        self.emails.append(email)

    def update_user(self) -> None:
        if not self.emails:
            self.insert_user()
            return
        email = self.rng.choice(self.emails)
        update: dict[str, Any] = {"$set": {"plan": self.rng.choice(PLANS), "updatedAt": now()}}
        if self.rng.random() < 0.2:
            update["$unset"] = {"notes": ""}  # production removes a field it owns
        elif self.rng.random() < 0.3:
            update["$set"]["address"] = self._address()
        self.users.update_one({"email": email}, update)

    def delete_user(self) -> None:
        if not self.emails:
            self.insert_user()
            return
        self.users.delete_one({"email": take(self.rng, self.emails)})

    # Orders -----------------------------------------------------------------------------------

    def insert_order(self) -> None:
        number = f"ORD-{self.run}-{self._next()}"
        items = [self._item() for _ in range(self.rng.randint(1, 4))]
        email = self.rng.choice(self.emails) if self.emails else self._new_email()
        self.orders.insert_one({
            "orderNumber": number,
            "customer": {"email": email, "name": self._name(),
                         "phone": f"+1 555 02{self.rng.randrange(100):02d}"},
            "shippingAddress": self._address(),
            "paymentNote": f"card ending {self.rng.randrange(10_000):04d}",
            "items": items,
            "total": round(sum(item["price"] * item["quantity"] for item in items), 2),
            "status": ORDER_STATUSES[0],
            "createdAt": now(),
            "updatedAt": now(),
        })
        self.order_numbers.append(number)

    def update_order(self) -> None:
        if not self.order_numbers:
            self.insert_order()
            return
        number = self.rng.choice(self.order_numbers)
        choice = self.rng.random()
        if choice < 0.6:
            update: dict[str, Any] = {"$set": {"status": self.rng.choice(ORDER_STATUSES),
                                               "updatedAt": now()}}
        elif choice < 0.85:
            item = self._item()
            update = {"$push": {"items": item},
                      "$inc": {"total": round(item["price"] * item["quantity"], 2)},
                      "$set": {"updatedAt": now()}}
        else:
            update = {"$unset": {"paymentNote": ""}, "$set": {"updatedAt": now()}}
        self.orders.update_one({"orderNumber": number}, update)

    def delete_order(self) -> None:
        if not self.order_numbers:
            self.insert_order()
            return
        self.orders.delete_one({"orderNumber": take(self.rng, self.order_numbers)})

    # Values -----------------------------------------------------------------------------------

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence

    def _new_email(self) -> str:
        return f"customer-{self.run}-{self._next()}@example.com"

    def _name(self) -> str:
        return f"{self.rng.choice(FIRST_NAMES)} {self.rng.choice(LAST_NAMES)}"

    def _address(self) -> dict[str, str]:
        city, country = self.rng.choice(CITIES)
        return {"street": f"{self.rng.randint(1, 250)} {self.rng.choice(STREETS)}",
                "city": city, "zip": f"{self.rng.randrange(100_000):05d}", "country": country}

    def _item(self) -> dict[str, Any]:
        return {"sku": self.rng.choice(SKUS), "quantity": self.rng.randint(1, 3),
                "price": round(self.rng.uniform(2, 120), 2)}


def take(rng: random.Random, keys: list[str]) -> str:
    """Remove and return a random key (swap with the last: O(1))."""
    index = rng.randrange(len(keys))
    keys[index], keys[-1] = keys[-1], keys[index]
    return keys.pop()


def now() -> datetime:
    return datetime.now(UTC)


def main() -> int:
    uri = os.environ.get("TRAFFIC_PROD_URI", DEFAULT_URI)
    database_name = os.environ.get("TRAFFIC_DATABASE", "shop")
    rate = bounded("TRAFFIC_RATE", 20.0, *RATE_BOUNDS)
    seconds = bounded("TRAFFIC_SECONDS", 300.0, *SECONDS_BOUNDS)
    seed = os.environ.get("TRAFFIC_SEED")
    rng = random.Random(seed)

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=30_000)
    try:
        client.admin.command("ping")
        traffic = Traffic(client[database_name], rng)
        traffic.load_known_keys()
    except PyMongoError as error:
        print(f"traffic: cannot reach production: {type(error).__name__}", file=sys.stderr)
        client.close()
        return 1
    print(f"traffic: {rate:g} operations/s for {seconds:g}s on {database_name}.orders and "
          f"{database_name}.users ({len(traffic.emails)} users, {len(traffic.order_numbers)} "
          "orders known)", flush=True)

    interval = 1.0 / rate
    started = time.monotonic()
    deadline = started + seconds
    next_at = started
    next_report = started + REPORT_EVERY_SECONDS
    while not stopping:
        current = time.monotonic()
        if current >= deadline:
            break
        if next_at > current:
            time.sleep(min(next_at - current, deadline - current, 0.5))
            continue
        traffic.step()
        # Steady pace; after a stall, carry on from now instead of bursting to catch up.
        next_at = max(next_at + interval, current - 1.0)
        if current >= next_report:
            next_report = current + REPORT_EVERY_SECONDS
            print(f"traffic: {sum(traffic.done.values())} operations, "
                  f"{sum(traffic.errors.values())} errors", flush=True)

    elapsed = time.monotonic() - started
    done = ", ".join(f"{name} {count}" for name, count in sorted(traffic.done.items()))
    print(f"traffic: stopped after {elapsed:.0f}s: {done or 'nothing'}", flush=True)
    if traffic.errors:
        errors = ", ".join(f"{name} {count}" for name, count in sorted(traffic.errors.items()))
        print(f"traffic: errors: {errors}", flush=True)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
