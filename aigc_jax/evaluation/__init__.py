"""Sample-quality and likelihood metrics (FID/IS/KID, bits/dim, perplexity)."""
