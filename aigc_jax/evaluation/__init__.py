"""Sample-quality and likelihood metrics (FID/IS/KID, bits/dim): planned; `--mode=eval` reports each method's own held-out loss today."""
