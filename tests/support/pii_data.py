"""Generated production orders for the PII scanner: personal fields of every kind the
scanner detects, and harmless ones, with the rules a scan should propose for them."""

from __future__ import annotations

import random
from typing import Any

from faker import Faker

PERSONAL = {
    "userEmail": "hash",  # a business-key field: hash, whatever its kind
    "contactEmail": "fake:email",
    "customer.firstName": "fake:name",
    "customer.lastName": "fake:name",
    "customer.phone": "fake:phone",
    "customer.dateOfBirth": "null",
    "shipping.street": "fake:address",
    "billingAddress": "fake:address",
    "payment.cardNumber": "hash",
    "payment.iban": "hash",
    "lastLoginIp": "hash",
    "notes": "redact",  # free text, a few with an email inside
}
HARMLESS = ["plan", "total", "lines.sku", "lines.quantity", "shipping.city", "createdAt",
            "marketing.emailOptIn", "lines.name", "orderRef"]


def generated_orders(count: int = 400, seed: int = 42) -> list[dict[str, Any]]:
    faker = Faker("en_US")
    faker.seed_instance(seed)
    chance = random.Random(seed)
    documents = []
    for number in range(count):
        note = faker.sentence(nb_words=8)
        if chance.random() < 0.1:
            note = f"{note} Reach me at {faker.email()} after 5pm."
        documents.append({
            "_id": number,
            "userEmail": faker.email(),
            "accountId": chance.randrange(1, 50),
            "contactEmail": faker.company_email(),
            "customer": {"firstName": faker.first_name(), "lastName": faker.last_name(),
                         "phone": faker.phone_number(),
                         "dateOfBirth": faker.date_of_birth().isoformat()},
            "shipping": {"street": faker.street_address(), "city": faker.city()},
            "billingAddress": faker.address(),
            "payment": {"cardNumber": faker.credit_card_number(), "iban": faker.iban()},
            "lastLoginIp": faker.ipv4(),
            "notes": note,
            "plan": chance.choice(["free", "gold", "platinum"]),
            "total": round(chance.uniform(1, 900), 2),
            "lines": [{"sku": f"SKU-{chance.randrange(10000, 99999)}",
                       "quantity": chance.randrange(1, 5),
                       "name": faker.catch_phrase()} for _ in range(chance.randrange(1, 4))],
            "orderRef": f"{2020 + number % 5}-{1 + number % 12:02d}-{number:06d}",
            "createdAt": faker.date_time(),
            "marketing": {"emailOptIn": chance.random() < 0.5},
        })
    return documents
