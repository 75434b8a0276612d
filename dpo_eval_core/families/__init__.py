"""The built-in claim families, one module each: every module here defines `FAMILY` (a `family.Family`) and the
registry finds it; nothing else needs to list it."""
