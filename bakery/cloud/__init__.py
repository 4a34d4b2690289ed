"""Everything that talks to EC2-compatible APIs lives here."""
