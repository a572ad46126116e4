"""ml_collections configs: get_config(arg) for mp2, mp3 and ssl (":demo" = tiny CPU runs)."""
