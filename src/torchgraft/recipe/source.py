"""Hydra config source that makes ``recipe=NAME`` mean ``recipes/NAME.yaml``.

Hydra names a config group after a directory inside a search-path root, so a folder
called ``recipes/`` cannot be the group ``recipe`` by itself. This source serves a
virtual tree whose ``recipe/`` group is a real folder: the current directory's
``recipes/`` (``graft-recipes://cwd``) or the examples shipped in the package
(``graft-recipes://bundled``). Recipes merge at the root of the config unless they
say otherwise with ``# @package``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.core.plugins import Plugins
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

GROUP = "recipe"


def bundled_recipes() -> Path:
    return Path(str(resources.files("torchgraft") / "recipes"))


def find_recipe(recipe: str | os.PathLike) -> Path:
    """A YAML path as it is; a bare name (``conv_only``) as ``recipe=NAME`` finds it:
    ``./recipes/NAME.yaml``, else the bundled recipe of that name."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") or path.exists() or len(path.parts) != 1:
        return path
    for root in (Path(os.getcwd()) / "recipes", bundled_recipes()):
        if (root / f"{path}.yaml").is_file():
            return root / f"{path}.yaml"
    return path


class RecipeSource(ConfigSource):
    @staticmethod
    def scheme() -> str:
        return "graft-recipes"

    def _root(self) -> Path:
        where = self.path.split("://", 1)[-1]
        return bundled_recipes() if where == "bundled" else Path(os.getcwd()) / "recipes"

    def _resolve(self, config_path: str) -> Path | None:
        """``recipe/a/b`` -> ``<root>/a/b``; anything outside the group -> None."""
        parts = config_path.strip("/").split("/")
        if parts[0] != GROUP:
            return None
        return self._root().joinpath(*parts[1:])

    def load_config(self, config_path: str) -> ConfigResult:
        path = self._resolve(self._normalize_file_name(config_path))
        if path is None or not path.is_file():
            raise ConfigLoadError(f"Config not found : {config_path}")
        text = path.read_text(encoding="utf-8")
        header = ConfigSource._get_header_dict(text[:512])
        if header.get("package") is None:
            header["package"] = "_global_"
        return ConfigResult(config=OmegaConf.create(OmegaConf.load(path)), path=f"{self.scheme()}://{self.path}", provider=self.provider, header=header)

    def available(self) -> bool:
        return True  # a working directory without recipes/ is normal, not worth a warning

    def is_group(self, config_path: str) -> bool:
        if config_path.strip("/") == "":
            return self._root().is_dir()
        path = self._resolve(config_path)
        return path is not None and path.is_dir()

    def is_config(self, config_path: str) -> bool:
        path = self._resolve(self._normalize_file_name(config_path))
        return path is not None and path.is_file()

    def _hidden(self) -> bool:
        """The bundled examples are not listed in a project with its own ``recipes/``, so
        ``recipe='glob(*)'`` sweeps the project's recipes only; by name they still load."""
        return self.path.split("://", 1)[-1] == "bundled" and (Path(os.getcwd()) / "recipes").is_dir()

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        if self._hidden():
            return []
        if config_path.strip("/") == "":
            return [GROUP] if self._root().is_dir() and results_filter in (None, ObjectType.GROUP) else []
        path = self._resolve(config_path)
        if path is None or not path.is_dir():
            return []
        files: list[str] = []
        for name in sorted(os.listdir(path)):
            self._list_add_result(files=files, file_path=f"{config_path}/{name}", file_name=name, results_filter=results_filter)
        return sorted(set(files))


class RecipeSearchPath(SearchPathPlugin):
    """Put both recipe folders on Hydra's base search path. (A ``hydra.searchpath`` in the
    primary config would not do: Hydra ignores it when expanding ``recipe='glob(*)'``.)"""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append("torchgraft", "graft-recipes://cwd")
        search_path.append("torchgraft", "graft-recipes://bundled")


def register() -> None:
    """Make ``recipe=NAME`` resolve through this module (idempotent)."""
    Plugins.instance().register(RecipeSource)
    Plugins.instance().register(RecipeSearchPath)
