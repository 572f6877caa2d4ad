-- A dispatch is never undone or changed (mirrored in
-- migrations/postgres/0017). The dispatch route moves an order from
-- 'accepted' to 'dispatched' once; nothing in checkoutd touches a
-- dispatched order's status or dispatch facts again. Rolled back in full
-- (status 'accepted', every fact NULL), an order passes its MAC check and
-- comes back into the warehouse's pending queue: the parcel would ship
-- twice, and a second dispatch would leave the audit nothing to find. The
-- database refuses it; the audit still finds one made with the guard
-- switched off (the access log records the first dispatch).
CREATE TRIGGER orders_dispatch_never_undone
BEFORE UPDATE OF status, carrier, tracking, dispatched_at, dispatch_mac ON orders
WHEN OLD.status = 'dispatched'
 AND (NEW.status IS NOT OLD.status OR NEW.carrier IS NOT OLD.carrier
      OR NEW.tracking IS NOT OLD.tracking OR NEW.dispatched_at IS NOT OLD.dispatched_at
      OR NEW.dispatch_mac IS NOT OLD.dispatch_mac)
BEGIN SELECT RAISE(ABORT, 'orders: a dispatch is never undone or changed'); END;
