"""What people look at: the HTML report (page, cards), the attention picture (explain) and Table 1 (table)."""
