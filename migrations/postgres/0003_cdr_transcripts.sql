-- What callers said in each menu (speech menus): a JSON array of
-- {menu, text, confidence, matched, score}, NULL for calls with no speech.
ALTER TABLE cdrs ADD COLUMN transcripts TEXT;
