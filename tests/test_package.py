"""The public surface: every name `keras_nfnet` advertises resolves, and an unknown one fails clearly."""
import pytest

import keras_nfnet


@pytest.mark.parametrize("name", keras_nfnet.__all__)
def test_every_public_name_resolves(name):
    assert getattr(keras_nfnet, name) is not None


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        keras_nfnet.NoSuchThing


def test_every_module_with_serializable_classes_is_registered_on_import():
    """`import keras_nfnet` must import every module whose classes a saved .keras file can name, or
    `keras.saving.load_model` fails in a fresh process for that class."""
    import pathlib

    package = pathlib.Path(keras_nfnet.__file__).parent
    declaring = {
        ".".join(path.relative_to(package).with_suffix("").parts)
        for path in package.rglob("*.py")
        if path.name != "__init__.py" and "register_keras_serializable" in path.read_text()
    }
    assert declaring == set(keras_nfnet._SERIALIZABLE_MODULES)
