-- A dispatch is never undone or changed (mirrored in
-- migrations/sqlite/0014). The dispatch route moves an order from
-- 'accepted' to 'dispatched' once; nothing in checkoutd touches a
-- dispatched order's status or dispatch facts again. Rolled back in full
-- (status 'accepted', every fact NULL), an order passes its MAC check and
-- comes back into the warehouse's pending queue: the parcel would ship
-- twice, and a second dispatch would leave the audit nothing to find. The
-- database refuses it; the audit still finds one made with the guard
-- switched off (the access log records the first dispatch).
CREATE FUNCTION orders_dispatch_never_undone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.status, NEW.carrier, NEW.tracking, NEW.dispatched_at, NEW.dispatch_mac)
       IS DISTINCT FROM (OLD.status, OLD.carrier, OLD.tracking, OLD.dispatched_at, OLD.dispatch_mac) THEN
        RAISE EXCEPTION 'orders: a dispatch is never undone or changed';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER orders_dispatch_never_undone
BEFORE UPDATE OF status, carrier, tracking, dispatched_at, dispatch_mac ON orders
FOR EACH ROW WHEN (OLD.status = 'dispatched')
EXECUTE FUNCTION orders_dispatch_never_undone();
