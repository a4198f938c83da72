"""Stage 1, `gemdeploy mine`: find a ticket with a method, fine-tune it, summarize (and sanity-check it)."""
