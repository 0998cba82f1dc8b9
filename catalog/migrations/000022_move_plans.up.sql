-- A change of plan across tiers (PATCH /admin/v1/tenants/{slug} to a plan
-- of the other isolation) is a promotion or a demotion that carries the new
-- plan: the tenant takes it in the move's switch, not before. plan is that
-- plan ('' for a promotion or demotion that keeps the plan, and for moves),
-- from_plan the tenant's plan when the move started (a revert puts it back).
ALTER TABLE moves ADD COLUMN plan text NOT NULL DEFAULT '';
ALTER TABLE moves ADD COLUMN from_plan text NOT NULL DEFAULT '';
