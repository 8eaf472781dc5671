import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # browser.py, the DevTools client the page test drives
