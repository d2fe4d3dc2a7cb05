"""The pilot and auth server: pilot records, secrets, pilot tokens and pilot logs."""
