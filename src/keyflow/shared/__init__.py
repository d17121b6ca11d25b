"""Shared mode: many processes, on many machines, using one PostgreSQL schema.

Each process decides about a key under the key's row lock in the database, with the
same pure rules as a single process (:mod:`keyflow.state`); workers lease the runs they
execute; ``LISTEN``/``NOTIFY`` wakes the others. See ``docs/deployment.md``.

* :mod:`~keyflow.shared.decide` — the pure part: a key's lane rebuilt from its rows;
* :mod:`~keyflow.shared.sql` — the statements;
* :mod:`~keyflow.shared.database` — the pool, transactions and notices;
* :mod:`~keyflow.shared.deciding` — triggers, cancels and due times under lane locks;
* :mod:`~keyflow.shared.claiming` — claims (lease, then start), and lost claims;
* :mod:`~keyflow.shared.leasing` — fenced writes, renewals, reclaims;
* :mod:`~keyflow.shared.watching` — who watches runs change (notices name them then);
* :mod:`~keyflow.shared.service` — the background tasks tying them to a scheduler.
"""
