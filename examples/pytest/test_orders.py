"""Ordinary tests against the worker's database: a schema, inserts, a query, a constraint."""

from __future__ import annotations

import pg8000.native
import pytest


@pytest.fixture
def orders(conn: pg8000.native.Connection) -> pg8000.native.Connection:
    """An empty `orders` table (made once per database, emptied for each test)."""
    conn.run(
        "CREATE TABLE IF NOT EXISTS orders ("
        " id serial PRIMARY KEY, customer text NOT NULL, total numeric(10, 2) NOT NULL CHECK (total >= 0))"
    )
    conn.run("TRUNCATE orders RESTART IDENTITY")
    return conn


def test_insert_and_select(orders: pg8000.native.Connection) -> None:
    for customer, total in [("ada", "12.50"), ("bob", "3.00"), ("ada", "7.25")]:
        orders.run("INSERT INTO orders (customer, total) VALUES (:c, CAST(:t AS numeric))", c=customer, t=total)
    rows = orders.run("SELECT customer, SUM(total)::text FROM orders GROUP BY customer ORDER BY customer")
    assert rows == [["ada", "19.75"], ["bob", "3.00"]]


def test_starts_empty(orders: pg8000.native.Connection) -> None:
    assert orders.run("SELECT count(*) FROM orders") == [[0]]


def test_constraint_rejects_negative_total(orders: pg8000.native.Connection) -> None:
    with pytest.raises(pg8000.native.DatabaseError, match="orders_total_check"):
        orders.run("INSERT INTO orders (customer, total) VALUES ('eve', -1)")
