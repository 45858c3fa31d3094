-- Schema version 2: the namespaces a device speaks (bit 1 = OMEMO 0.3, bit 2 = OMEMO 2).
-- Devices created under schema 1 spoke OMEMO 0.3 only.
ALTER TABLE omemo_account ADD COLUMN namespaces INTEGER NOT NULL DEFAULT 1;
