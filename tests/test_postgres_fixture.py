"""The postgres_db fixture gives a real server with password auth on 127.0.0.1."""

import psycopg2
import pytest


def test_postgres_db_is_real_server_with_password(postgres_db):
    assert postgres_db["host"] == "127.0.0.1"
    conn = psycopg2.connect(
        host=postgres_db["host"],
        port=postgres_db["port"],
        user=postgres_db["user"],
        password=postgres_db["password"],
        dbname=postgres_db["dbname"],
        connect_timeout=10,
    )
    try:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE files (id serial PRIMARY KEY, name text NOT NULL)")
            cur.execute("INSERT INTO files (name) VALUES (%s)", ("data_001.res",))
            cur.execute("SELECT name FROM files")
            assert cur.fetchall() == [("data_001.res",)]
            cur.execute("SELECT current_database(), inet_server_addr()::text")
            dbname, addr = cur.fetchone()
            assert dbname == postgres_db["dbname"]
            assert addr.split("/")[0] == "127.0.0.1"
    finally:
        conn.close()

    # a wrong password is refused: authentication is really enforced
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(
            host=postgres_db["host"],
            port=postgres_db["port"],
            user=postgres_db["user"],
            password="wrong-" + postgres_db["password"],
            dbname=postgres_db["dbname"],
            connect_timeout=10,
        ).close()
