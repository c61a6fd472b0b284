"""Importers of real speech corpora into babelora manifests: CoVoST-2, MuST-C, FLEURS and Fish
Fillets NG's voice acting."""

from babelora.data.importers.common import ImportReport
from babelora.data.importers.covost2 import import_covost2
from babelora.data.importers.fillets import import_fillets
from babelora.data.importers.fleurs import import_fleurs
from babelora.data.importers.mustc import import_mustc

__all__ = ["ImportReport", "import_covost2", "import_fillets", "import_fleurs", "import_mustc"]
