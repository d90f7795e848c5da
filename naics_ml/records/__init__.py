"""Users' business records: files in a folder, read in chunks and coded by a served stage."""
