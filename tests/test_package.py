"""The public surface: every name `keras_nfnet` advertises resolves, and an unknown one fails clearly."""
import pytest

import keras_nfnet


@pytest.mark.parametrize("name", keras_nfnet.__all__)
def test_every_public_name_resolves(name):
    assert getattr(keras_nfnet, name) is not None


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        keras_nfnet.NoSuchThing
