-- The example source for deploy/docker-compose.yml: a shop's customers table and a
-- read-only role for personyze-sync. Runs once, when the database volume is created
-- (the postgres image runs /docker-entrypoint-initdb.d/* in name order, in database shop).

CREATE TABLE public.customers (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text,
    first_name  text,
    last_name   text,
    city        text,
    vip         boolean NOT NULL DEFAULT false,
    password_hash text,                      -- never mapped, so never sent
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The sync reads changed rows in (cursor, key) order: index exactly that.
CREATE INDEX customers_updated_at_id ON public.customers (updated_at, id);

-- The cursor must move whenever a row changes, whoever changes it.
CREATE FUNCTION public.touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER customers_touch_updated_at
    BEFORE UPDATE ON public.customers
    FOR EACH ROW EXECUTE FUNCTION public.touch_updated_at();

INSERT INTO public.customers (email, first_name, last_name, city, vip) VALUES
    ('ada@example.com',    'Ada',    'Lovelace', 'London',    true),
    ('alan@example.com',   'Alan',   'Turing',   'Wilmslow',  false),
    ('grace@example.com',  'Grace',  'Hopper',   'Arlington', true),
    ('edsger@example.com', 'Edsger', 'Dijkstra', 'Nuenen',    false),
    ('barbara@example.com','Barbara','Liskov',   'Boston',    false);

-- personyze-sync only ever reads. Its password is set by 20-reader-password.sh
-- from PG_PASSWORD, so that no password is written in this file.
CREATE ROLE personyze_reader LOGIN;
ALTER ROLE personyze_reader SET default_transaction_read_only = on;
GRANT CONNECT ON DATABASE shop TO personyze_reader;
GRANT USAGE ON SCHEMA public TO personyze_reader;
GRANT SELECT ON public.customers TO personyze_reader;
