"""Print the README's prune option table from the declared options (paste it into README.md)."""
from slim_plugins.config import options_markdown
from slim_plugins.plugins.prune.options import PruneOptions

if __name__ == "__main__":
    print(options_markdown(PruneOptions))
