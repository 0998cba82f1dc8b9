ALTER TABLE invoices DROP COLUMN automatic_tax, DROP COLUMN tax;
DROP TABLE billing_addresses;
DROP TABLE erasures;
DROP TABLE exports;
DROP TABLE restores;
DROP TABLE backups;
ALTER TABLE plans DROP COLUMN backup_retention, DROP COLUMN backup_interval;
