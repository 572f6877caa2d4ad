-- The one guard function whose search path 0017 left to the caller:
-- pinned like the others (0011, 0018, 0020, 0023). Its body's operators
-- (the `IS DISTINCT FROM` of a dispatch's facts) are looked up when it
-- runs; with the writing session's path, a role whose path names a
-- schema of someone's own first could put an operator there under which
-- every change reads as no change. Pinned, the catalogue's come first.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION orders_dispatch_never_undone() SET search_path = %I, pg_temp',
                   current_schema());
END $$;
