ALTER TABLE tenants DROP COLUMN access_layout;
