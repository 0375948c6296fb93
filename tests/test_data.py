"""Tests for hyperlatent.data: every reader is checked against tiny files written here by hand (struct/gzip/
pickle/PIL, not the module's own writers), corrupt and missing files, the fixed digits split against an
independent re-implementation of its documented rule, and the class-balanced sampler's properties."""
import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import hyperlatent.data as D
from hyperlatent.data import (ClassBalancedBatchSampler, CorruptDatasetError, LabeledDataset, MissingDatasetError,
                              class_split, concat, flatten, heldout_mask, leave_one_class_out, load_cifar_folder,
                              load_dataset, load_image_folder, read_idx, read_pickle_batch, select_classes,
                              stratified_subsample, write_idx)

PIL = pytest.importorskip('PIL')
from PIL import Image  # noqa: E402


# ----------------------------------------------------------------------------------------------- helpers
def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding written from the format description (independent of hyperlatent.data.write_idx)."""
    code = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}
    head = struct.pack('>BBBB', 0, 0, code[arr.dtype.type], arr.ndim) + struct.pack(f'>{arr.ndim}I', *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder('>')).tobytes()


def write_mnist(folder, split, images, labels, gz_images=True, gz_labels=False):
    stems = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
             'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}[split]
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr, gz in ((stems[0], images, gz_images), (stems[1], labels, gz_labels)):
        b = idx_bytes(arr)
        (folder / (stem + ('.gz' if gz else ''))).write_bytes(gzip.compress(b) if gz else b)
    return [folder / (stems[0] + ('.gz' if gz_images else '')), folder / (stems[1] + ('.gz' if gz_labels else ''))]


def dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'wb') as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar10(root, rng, per_batch=3, n_test=4):
    folder = root / 'cifar-10-batches-py'
    names = [f'class{k}' for k in range(10)]
    dump(folder / 'batches.meta', {b'label_names': [n.encode() for n in names], b'num_cases_per_batch': per_batch})
    batches = {}
    for f, n in [(f'data_batch_{i}', per_batch) for i in range(1, 6)] + [('test_batch', n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        dump(folder / f, {b'batch_label': f.encode(), b'labels': labels, b'data': data,
                          b'filenames': [b'x.png'] * n})
        batches[f] = (data, labels)
    return folder, names, batches


def make_cifar100(root, rng, n_train=6, n_test=4):
    folder = root / 'cifar-100-python'
    fine = [f'fine{k}' for k in range(100)]
    coarse = [f'coarse{k}' for k in range(20)]
    dump(folder / 'meta', {b'fine_label_names': [s.encode() for s in fine],
                           b'coarse_label_names': [s.encode() for s in coarse]})
    out = {}
    for f, n in (('train', n_train), ('test', n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        yf, yc = [int(v) for v in rng.integers(0, 100, n)], [int(v) for v in rng.integers(0, 20, n)]
        dump(folder / f, {b'data': data, b'fine_labels': yf, b'coarse_labels': yc})
        out[f] = (data, yf, yc)
    return folder, fine, coarse, out


def cifar_pixel(row: np.ndarray, c: int, h: int, w: int) -> int:
    """The documented CIFAR layout: 1024 red, then 1024 green, then 1024 blue values, row-major."""
    return int(row[c * 1024 + h * 32 + w])


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ digits
def test_digits_split_is_fixed_stratified_and_disjoint():
    from sklearn.datasets import load_digits
    d = load_digits()
    # The documented rule, re-implemented here.
    rs = np.random.RandomState(0)
    expected_test = np.sort(np.concatenate(
        [rs.permutation(np.flatnonzero(d.target == c))[: int(round(0.2 * (d.target == c).sum()))] for c in range(10)]))
    train_idx, test_idx = D.digits_split_indices()
    np.testing.assert_array_equal(test_idx, expected_test)
    assert len(np.intersect1d(train_idx, test_idx)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(len(d.target)))

    tr, te = load_dataset('digits', split='train'), load_dataset('digits', split='test')
    assert (len(tr), len(te)) == (1438, 359) and len(tr) + len(te) == 1797
    for c in range(10):  # stratified: round(20 %) of every class in test
        n_c = int((d.target == c).sum())
        assert int((te.y == c).sum()) == round(0.2 * n_c)
    # contents against scikit-learn directly
    np.testing.assert_array_equal(te.x.numpy().reshape(-1, 64), d.data[test_idx].astype(np.float32) / 16)
    np.testing.assert_array_equal(tr.y.numpy(), d.target[train_idx])
    # fixed: a second load gives the same tensors
    tr2 = load_dataset('digits', split='train')
    assert torch.equal(tr.x, tr2.x) and torch.equal(tr.y, tr2.y)


def test_digits_contract():
    ds = load_dataset('digits')
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64 and ds.shape == (1, 8, 8)
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert ds.classes == [str(c) for c in range(10)] and ds.name == 'digits' and ds.split == 'train' and ds.source
    x0, y0 = ds[0]
    assert torch.equal(x0, ds.x[0]) and int(y0) == int(ds.y[0])
    allds = load_dataset('digits', split='all')
    assert len(allds) == 1797
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=False)
    xb, yb = next(iter(loader))
    assert xb.shape == (64, 1, 8, 8) and torch.equal(yb, ds.y[:64])


def test_load_dataset_argument_errors():
    with pytest.raises(ValueError, match='split'):
        load_dataset('digits', split='val')
    with pytest.raises(ValueError, match='unknown dataset'):
        load_dataset('no_such_set_xyz')
    with pytest.raises(ValueError, match='image_size'):
        load_dataset('digits', image_size=0)
    with pytest.raises(TypeError, match='name'):
        load_dataset(3)


def test_labeled_dataset_validation_and_helpers():
    x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 1, 0, 1])
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        LabeledDataset(x + 1, y, ['a', 'b'], 'n', 's', 'src')
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        LabeledDataset(torch.full((5, 3), float('nan')), y, ['a', 'b'], 'n', 's', 'src')
    with pytest.raises(ValueError, match='N = len'):
        LabeledDataset(x[:4], y, ['a', 'b'], 'n', 's', 'src')
    with pytest.raises(TypeError, match='integer'):
        LabeledDataset(x, y.float(), ['a', 'b'], 'n', 's', 'src')
    with pytest.raises(ValueError, match=r'\[0, 1\)'):
        LabeledDataset(x, y, ['a'], 'n', 's', 'src')
    ds = LabeledDataset(x, y, ['a', 'b'], 'n', 's', 'src')
    f = flatten(ds)
    assert f.x.shape == (5, 4) and torch.equal(f.x[2], x[2].reshape(-1)) and f.meta['image_shape'] == (1, 2, 2)
    c = concat([ds, ds.subset([0])])
    assert len(c) == 6 and torch.equal(c.x[5], x[0])
    assert torch.equal(ds.subset(torch.tensor([-1])).y, y[-1:])
    with pytest.raises(ValueError, match='idx'):
        ds.subset([5])


# --------------------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize('gz_images,gz_labels', [(True, True), (False, False), (True, False)])
def test_mnist_idx_roundtrip(tmp_path, gz_images, gz_labels):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labs = rng.integers(0, 10, 7).astype(np.uint8)
    write_mnist(tmp_path / 'mnist', 'train', imgs, labs, gz_images, gz_labels)
    ds = load_dataset('mnist', root=tmp_path, split='train')
    assert ds.shape == (1, 28, 28) and len(ds) == 7 and ds.split == 'train'
    assert torch.equal(ds.y, torch.from_numpy(labs.astype(np.int64)))
    assert torch.equal(ds.x[:, 0], torch.from_numpy(imgs).float() / 255)
    assert ds.classes == [str(c) for c in range(10)]


def test_fashion_mnist_classes_and_all_split(tmp_path):
    rng = np.random.default_rng(2)
    tr_i, tr_l = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), np.array([0, 9, 3, 3], np.uint8)
    te_i, te_l = rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), np.array([8, 1], np.uint8)
    write_mnist(tmp_path / 'fashion_mnist', 'train', tr_i, tr_l)
    write_mnist(tmp_path / 'fashion_mnist', 'test', te_i, te_l, gz_images=False)
    for name in ('fashion_mnist', 'fmnist', 'Fashion-MNIST'):
        ds = load_dataset(name, root=tmp_path, split='test')
        assert ds.classes[8] == 'Bag' and ds.classes[0] == 'T-shirt/top' and len(ds.classes) == 10
    a = load_dataset('fmnist', root=tmp_path, split='all')
    assert len(a) == 6 and a.y.tolist() == [0, 9, 3, 3, 8, 1]
    assert torch.equal(a.x[4, 0], torch.from_numpy(te_i[0]).float() / 255)


def test_read_idx_other_dtypes_and_write_idx(tmp_path):
    for arr in (np.arange(-6, 6, dtype=np.int16).reshape(3, 4), np.linspace(-1, 1, 10, dtype=np.float32),
                np.array([[1.5, -2.25]], np.float64), np.arange(-3, 3, dtype=np.int32)):
        (tmp_path / 'a').write_bytes(idx_bytes(arr))
        out = read_idx(tmp_path / 'a')
        assert out.dtype == arr.dtype and np.array_equal(out, arr)
        write_idx(tmp_path / 'b.gz', arr)  # module writer -> hand-made bytes after gunzip
        assert gzip.decompress((tmp_path / 'b.gz').read_bytes()) == idx_bytes(arr)


def test_idx_corruption_is_a_clear_error(tmp_path):
    imgs, labs = np.zeros((3, 28, 28), np.uint8), np.array([1, 2, 3], np.uint8)
    good = idx_bytes(imgs)
    cases = {
        'bad magic': (b'\x08\x03\x00\x00' + good[4:], 'not an IDX file'),
        'truncated payload': (good[:-5], 'truncated'),
        'trailing bytes': (good + b'\x00', 'trailing'),
        'truncated header': (good[:6], 'truncated IDX header'),
        'empty': (b'', 'not an IDX file'),
        'truncated gzip': (gzip.compress(good)[:40], 'gzip'),
    }
    for what, (content, msg) in cases.items():
        folder = tmp_path / what.replace(' ', '_') / 'mnist'
        write_mnist(folder, 'test', imgs, labs, gz_images=False)
        img_file = folder / 't10k-images-idx3-ubyte'
        img_file.write_bytes(content)
        with pytest.raises(CorruptDatasetError, match=msg) as e:
            load_dataset('mnist', root=folder.parent, split='test')
        assert 't10k-images-idx3-ubyte' in str(e.value), what


def test_idx_pair_inconsistencies(tmp_path):
    imgs = np.zeros((3, 28, 28), np.uint8)
    write_mnist(tmp_path / 'a' / 'mnist', 'test', imgs, np.array([1, 2], np.uint8))
    with pytest.raises(CorruptDatasetError, match='3 images but .* 2 labels'):
        load_dataset('mnist', root=tmp_path / 'a', split='test')
    write_mnist(tmp_path / 'b' / 'mnist', 'test', imgs, np.array([1, 2, 10], np.uint8))
    with pytest.raises(CorruptDatasetError, match='out of range'):
        load_dataset('mnist', root=tmp_path / 'b', split='test')
    write_mnist(tmp_path / 'c' / 'mnist', 'test', imgs.astype(np.int16), np.array([1, 2, 3], np.uint8))
    with pytest.raises(CorruptDatasetError, match='uint8 images'):
        load_dataset('mnist', root=tmp_path / 'c', split='test')


def test_missing_idx_files_one_error_naming_files_and_folder(tmp_path):
    with pytest.raises(MissingDatasetError) as e:
        load_dataset('mnist', root=tmp_path, split='all')
    msg = str(e.value)
    for f in ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'):
        assert f in msg
    assert str(tmp_path / 'mnist') in msg and 'download=True' in msg
    assert isinstance(e.value, FileNotFoundError)
    # only the labels missing: still named
    (tmp_path / 'mnist').mkdir()
    (tmp_path / 'mnist' / 'train-images-idx3-ubyte.gz').write_bytes(gzip.compress(idx_bytes(np.zeros((1, 2, 2), np.uint8))))
    with pytest.raises(MissingDatasetError, match=r'missing: train-labels-idx1-ubyte\)'):
        load_dataset('mnist', root=tmp_path, split='train')


# ------------------------------------------------------------------------------------------------- CIFAR
def test_cifar10_pickles(tmp_path):
    rng = np.random.default_rng(3)
    folder, names, batches = make_cifar10(tmp_path, rng)
    tr = load_dataset('cifar10', root=tmp_path, split='train')
    assert tr.classes == names and len(tr) == 15 and tr.shape == (3, 32, 32)
    order = [f'data_batch_{i}' for i in range(1, 6)]
    assert tr.y.tolist() == sum((batches[f][1] for f in order), [])
    all_rows = np.concatenate([batches[f][0] for f in order])
    for i, c, h, w in [(0, 0, 0, 0), (4, 1, 5, 31), (14, 2, 31, 7), (9, 2, 16, 16)]:
        assert tr.x[i, c, h, w].item() == pytest.approx(cifar_pixel(all_rows[i], c, h, w) / 255, abs=1e-7)
    te = load_dataset('cifar-10', root=tmp_path, split='test')
    assert len(te) == 4 and te.y.tolist() == batches['test_batch'][1]
    assert torch.equal(te.x.reshape(4, -1), torch.from_numpy(batches['test_batch'][0]).float() / 255)


def test_cifar100_fine_and_coarse(tmp_path):
    rng = np.random.default_rng(4)
    folder, fine, coarse, out = make_cifar100(tmp_path, rng)
    ds = load_dataset('cifar100', root=tmp_path, split='train')
    assert ds.classes == fine and ds.y.tolist() == out['train'][1]
    assert ds.extras['y_coarse'].tolist() == out['train'][2] and ds.meta['coarse_classes'] == coarse
    assert torch.equal(ds.x.reshape(6, -1), torch.from_numpy(out['train'][0]).float() / 255)
    dc = load_dataset('cifar100_coarse', root=tmp_path, split='test')
    assert dc.classes == coarse and dc.y.tolist() == out['test'][2] and dc.extras['y_fine'].tolist() == out['test'][1]
    # extras follow subsets and class splits
    sub = ds.subset([3, 1])
    assert sub.extras['y_coarse'].tolist() == [out['train'][2][3], out['train'][2][1]]


def test_cifar_corruption(tmp_path):
    rng = np.random.default_rng(5)
    folder, names, batches = make_cifar10(tmp_path, rng)
    raw = (folder / 'data_batch_3').read_bytes()
    (folder / 'data_batch_3').write_bytes(raw[: len(raw) // 2])  # truncated pickle
    with pytest.raises(CorruptDatasetError, match='data_batch_3'):
        load_dataset('cifar10', root=tmp_path)
    dump(folder / 'data_batch_3', {b'data': np.zeros((2, 100), np.uint8), b'labels': [0, 1]})  # wrong row length
    with pytest.raises(CorruptDatasetError, match=r'\(N, 3072\)'):
        load_dataset('cifar10', root=tmp_path)
    dump(folder / 'data_batch_3', {b'data': np.zeros((2, 3072), np.uint8), b'labels': [0]})  # label count
    with pytest.raises(CorruptDatasetError, match='2 integer labels'):
        load_dataset('cifar10', root=tmp_path)
    dump(folder / 'data_batch_3', {b'data': np.zeros((2, 3072), np.uint8), b'labels': [0, 12]})  # label range
    with pytest.raises(CorruptDatasetError, match='outside'):
        load_dataset('cifar10', root=tmp_path)
    dump(folder / 'data_batch_3', [1, 2, 3])  # not a dict
    with pytest.raises(CorruptDatasetError, match='dict'):
        load_dataset('cifar10', root=tmp_path)


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / 'pwned'

    class Evil:
        def __reduce__(self):
            return (os.system, (f'touch {marker}',))

    p = tmp_path / 'evil'
    p.write_bytes(pickle.dumps({b'data': Evil()}, protocol=2))
    with pytest.raises(CorruptDatasetError, match='not allowed'):
        read_pickle_batch(p)
    assert not marker.exists()


def test_missing_cifar_names_files(tmp_path):
    rng = np.random.default_rng(6)
    folder, _, _ = make_cifar10(tmp_path, rng)
    (folder / 'data_batch_4').unlink()
    with pytest.raises(MissingDatasetError) as e:
        load_dataset('cifar10', root=tmp_path)
    msg = str(e.value)
    assert 'missing: data_batch_4)' in msg and str(folder) in msg and 'cifar-10-python.tar.gz' in msg
    assert len(load_dataset('cifar10', root=tmp_path, split='test')) == 4  # the test split is complete
    with pytest.raises(MissingDatasetError, match='cifar-100-python'):
        load_dataset('cifar100', root=tmp_path)


# ------------------------------------------------------------------------------------------ image folders
def save_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_image_folder_exact_pixels_and_labels(tmp_path):
    rng = np.random.default_rng(7)
    arrs = {}
    for c in ('b_class', 'a_class'):
        for i in range(2):
            a = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
            save_png(tmp_path / 'set' / c / f'img{i}.png', a)
            arrs[(c, i)] = a
    (tmp_path / 'set' / 'a_class' / 'notes.txt').write_text('not an image')
    (tmp_path / 'set' / 'a_class' / '.hidden.png').write_bytes(b'junk')
    ds = load_image_folder(tmp_path / 'set')
    assert ds.classes == ['a_class', 'b_class'] and ds.y.tolist() == [0, 0, 1, 1] and ds.shape == (3, 5, 6)
    for k, key in enumerate([('a_class', 0), ('a_class', 1), ('b_class', 0), ('b_class', 1)]):
        assert torch.equal(ds.x[k], torch.from_numpy(arrs[key]).permute(2, 0, 1).float() / 255)
    g = load_image_folder(tmp_path / 'set', mode='L')
    assert g.shape == (1, 5, 6)
    expected = np.array(Image.fromarray(arrs[('b_class', 1)]).convert('L'))
    assert torch.equal(g.x[3, 0], torch.from_numpy(expected).float() / 255)


def test_image_folder_resize_and_centre_crop(tmp_path):
    # A uniform image stays uniform at any size; a wide image is centre-cropped.
    save_png(tmp_path / 's' / 'u' / '0.png', np.full((30, 20, 3), (10, 200, 90), np.uint8))
    wide = np.zeros((4, 12, 3), np.uint8)
    wide[:, :4] = (255, 0, 0); wide[:, 4:8] = (0, 255, 0); wide[:, 8:] = (0, 0, 255)
    save_png(tmp_path / 's' / 'w' / '0.png', wide)
    ds = load_image_folder(tmp_path / 's', image_size=4)
    assert ds.shape == (3, 4, 4)
    assert torch.allclose(ds.x[0], torch.tensor([10, 200, 90]).view(3, 1, 1).float().expand(3, 4, 4) / 255, atol=1 / 255)
    assert torch.allclose(ds.x[1], torch.tensor([0., 1., 0.]).view(3, 1, 1).expand(3, 4, 4), atol=1 / 255)  # the middle third
    with pytest.raises(ValueError, match='image_size'):
        load_image_folder(tmp_path / 's')
    with pytest.raises(ValueError, match='image_size'):
        load_image_folder(tmp_path / 's', image_size=-2)


def test_corrupt_image_is_a_clear_error(tmp_path):
    save_png(tmp_path / 's' / 'a' / '0.png', np.zeros((8, 8, 3), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, 'PNG')
    (tmp_path / 's' / 'a' / '1.png').write_bytes(buf.getvalue()[:200])
    with pytest.raises(CorruptDatasetError, match='1.png'):
        load_image_folder(tmp_path / 's', image_size=8)
    (tmp_path / 's' / 'a' / '1.png').write_bytes(b'this is not a png')
    with pytest.raises(CorruptDatasetError, match='cannot decode'):
        load_image_folder(tmp_path / 's', image_size=8)


def test_imagenette_layout_labels_agree_across_splits(tmp_path):
    base = tmp_path / 'imagenette2-160'
    save_png(base / 'train' / 'n03888257' / 'a.JPEG', np.zeros((20, 30, 3), np.uint8))
    save_png(base / 'train' / 'n01440764' / 'b.png', np.full((25, 25, 3), 255, np.uint8))
    save_png(base / 'val' / 'n03888257' / 'c.png', np.zeros((25, 40, 3), np.uint8))  # val lacks the tench folder
    tr = load_dataset('imagenette', root=tmp_path, split='train')
    te = load_dataset('imagenette', root=tmp_path, split='test', image_size=16)
    assert tr.classes == te.classes == ['tench', 'parachute']
    assert tr.shape == (3, 64, 64) and te.shape == (3, 16, 16)
    assert tr.y.tolist() == [0, 1] and te.y.tolist() == [1]
    assert float(tr.x[0].min()) == 1.0 and float(tr.x[1].max()) == 0.0


def test_generic_folder_and_named_folder_sets(tmp_path):
    for split in ('train', 'test'):
        for c in ('normal', 'novel'):
            save_png(tmp_path / 'mars_novelty' / split / c / '0.png', np.zeros((10, 10, 3), np.uint8))
    ds = load_dataset('mars_novelty', root=tmp_path, split='all', image_size=8)
    assert len(ds) == 4 and ds.classes == ['normal', 'novel'] and ds.shape == (3, 8, 8)
    gen = load_dataset(str(tmp_path / 'mars_novelty'), split='test')
    assert gen.shape == (3, 10, 10) and gen.y.tolist() == [0, 1]
    flat = tmp_path / 'flat'
    save_png(flat / 'x' / '0.png', np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="split='all'"):
        load_dataset(str(flat))
    assert len(load_dataset(str(flat), split='all')) == 1
    with pytest.raises(MissingDatasetError, match=r'galaxy_zoo/\{train,test\}/<class>') as e:
        load_dataset('galaxy_zoo', root=tmp_path)
    assert 'no automatic download' in str(e.value)
    with pytest.raises(MissingDatasetError, match='imagenette2-160.tgz'):
        load_dataset('imagenette', root=tmp_path, split='test')


# ------------------------------------------------------------------------------------------------ downloads
@pytest.fixture
def mnist_server(tmp_path, monkeypatch):
    """A file:// 'server' holding tiny gzipped MNIST files; the module's resources point at it."""
    server = tmp_path / 'server'
    server.mkdir()
    rng = np.random.default_rng(8)
    imgs, labs = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), np.array([7, 0, 7], np.uint8)
    files = {'t10k-images-idx3-ubyte.gz': idx_bytes(imgs), 't10k-labels-idx1-ubyte.gz': idx_bytes(labs),
             'train-images-idx3-ubyte.gz': idx_bytes(imgs[:1]), 'train-labels-idx1-ubyte.gz': idx_bytes(labs[:1])}
    for f, b in files.items():
        (server / f).write_bytes(gzip.compress(b))
    res = {'bases': [server.as_uri() + '/'], 'md5': {f: md5(server / f) for f in files}}
    monkeypatch.setitem(D._RESOURCES, 'mnist', res)
    return server, res, imgs, labs


def test_download_verifies_and_loads(tmp_path, mnist_server):
    server, res, imgs, labs = mnist_server
    root = tmp_path / 'data'
    ds = load_dataset('mnist', root=root, split='test', download=True)
    assert ds.y.tolist() == [7, 0, 7] and torch.equal(ds.x[:, 0], torch.from_numpy(imgs).float() / 255)
    assert sorted(p.name for p in (root / 'mnist').iterdir()) == ['t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz']


def test_download_checksum_mismatch_leaves_nothing(tmp_path, mnist_server):
    server, res, _, _ = mnist_server
    res['md5']['t10k-images-idx3-ubyte.gz'] = '0' * 32
    root = tmp_path / 'data'
    with pytest.raises(CorruptDatasetError, match='checksum mismatch'):
        load_dataset('mnist', root=root, split='test', download=True)
    assert not any(p.name.startswith('t10k-images') or p.suffix == '.part' for p in (root / 'mnist').iterdir())


def test_download_offline_gives_missing_error(tmp_path, monkeypatch):
    monkeypatch.setitem(D._RESOURCES, 'mnist', {'bases': [(tmp_path / 'nowhere').as_uri() + '/'],
                                                'md5': {f: '0' * 32 for f in D._RESOURCES['mnist']['md5']}})
    with pytest.raises(MissingDatasetError) as e:
        load_dataset('mnist', root=tmp_path / 'data', split='train', download=True)
    assert 'download failed' in str(e.value) and 'train-images-idx3-ubyte' in str(e.value)
    assert not list((tmp_path / 'data' / 'mnist').glob('*'))


def test_download_and_extract_cifar_archive(tmp_path, monkeypatch):
    src = tmp_path / 'src'
    rng = np.random.default_rng(9)
    folder, names, batches = make_cifar10(src, rng)
    archive = tmp_path / 'server' / 'cifar-10-python.tar.gz'
    archive.parent.mkdir()
    with tarfile.open(archive, 'w:gz') as tf:
        tf.add(folder, arcname='cifar-10-batches-py')
    monkeypatch.setitem(D._RESOURCES, 'cifar10', {'url': archive.as_uri(), 'md5': md5(archive),
                                                  'folder': 'cifar-10-batches-py'})
    root = tmp_path / 'data'
    ds = load_dataset('cifar10', root=root, split='test', download=True)
    assert ds.y.tolist() == batches['test_batch'][1]
    assert (root / 'cifar-10-batches-py' / 'data_batch_5').is_file()
    assert [p.name for p in root.iterdir() if p.name.startswith('.')] == []  # no temp folders left


# ---------------------------------------------------------------------------------------------- class splits
def test_class_split_and_relabel():
    ds = load_dataset('digits', split='test')
    normal, held = class_split(ds, heldout=[3, '8'])
    assert set(normal.y.tolist()) == set(range(10)) - {3, 8} and set(held.y.tolist()) == {3, 8}
    assert len(normal) + len(held) == len(ds)
    n2, h2 = class_split(ds, normal=[c for c in range(10) if c not in (3, 8)])
    assert torch.equal(n2.y, normal.y) and torch.equal(h2.x, held.x)
    rn, rh = class_split(ds, heldout=['3', '8'], relabel=True)
    assert rn.classes == ['0', '1', '2', '4', '5', '6', '7', '9'] and rh.classes == ['3', '8']
    for sub in (rn, rh):  # the new label names the same class as the original one
        assert [sub.classes[int(k)] for k in sub.y] == [ds.classes[int(k)] for k in sub.extras['y_orig']]
    assert torch.equal(rn.x, normal.x)
    with pytest.raises(ValueError, match='disjoint'):
        class_split(ds, normal=[1, 2], heldout=[2])
    with pytest.raises(ValueError, match='unknown class name'):
        class_split(ds, heldout=['ten'])
    with pytest.raises(ValueError, match='neither'):
        class_split(ds)


def test_select_classes_order_and_nesting():
    ds = load_dataset('digits', split='test')
    s = select_classes(ds, [9, 2])
    assert s.classes == ['9', '2'] and set(s.y.tolist()) == {0, 1}
    assert torch.equal(s.y == 0, s.extras['y_orig'] == 9)
    s2 = select_classes(s, ['2'])  # y_orig still refers to the digits labels
    assert s2.classes == ['2'] and (s2.extras['y_orig'] == 2).all() and len(s2) == int((ds.y == 2).sum())


def test_leave_one_class_out_and_heldout_mask():
    ds = load_dataset('digits', split='test')
    seen = []
    for c, normal, held in leave_one_class_out(ds, relabel=True):
        seen.append(c)
        assert len(normal.classes) == 9 and str(c) not in normal.classes
        assert len(held) == int((ds.y == c).sum()) and len(normal) + len(held) == len(ds)
        m = heldout_mask(ds, [c])
        assert torch.equal(m, ds.y == c)
    assert seen == list(range(10))


def test_stratified_subsample():
    ds = load_dataset('digits', split='train')
    a = stratified_subsample(ds, 5, generator=torch.Generator().manual_seed(0))
    b = stratified_subsample(ds, 5, generator=torch.Generator().manual_seed(0))
    assert a.class_counts().tolist() == [5] * 10 and torch.equal(a.x, b.x)
    big = stratified_subsample(ds, 10_000)
    assert len(big) == len(ds)


# ---------------------------------------------------------------------------------------------- the sampler
def check_sampler(labels: torch.Tensor, batch_size: int, seed: int):
    s = ClassBalancedBatchSampler(labels, batch_size, generator=torch.Generator().manual_seed(seed))
    batches = list(s)
    classes = torch.unique(labels)
    K = len(classes)
    q = batch_size // K
    assert len(batches) == len(s) == math.ceil(len(labels) / batch_size)
    freq = torch.zeros(len(labels), dtype=torch.int64)
    for b in batches:
        assert len(b) == batch_size
        counts = torch.stack([(labels[b] == c).sum() for c in classes])
        assert (counts >= max(q, 1)).all() and (counts <= q + 1).all()  # every class, balanced
        assert int((counts == q + 1).sum()) == batch_size - q * K
        freq += torch.bincount(torch.tensor(b), minlength=len(labels))
    for c in classes:  # each index of a class is used floor or ceil of (class draws / class size) times
        m = labels == c
        T, n = int(freq[m].sum()), int(m.sum())
        assert set(freq[m].tolist()) <= {T // n, -(-T // n)}
    return batches


def test_sampler_every_class_every_batch_and_frequencies():
    labels = torch.tensor([0] * 40 + [1] * 25 + [5] * 3 + [2] * 12)
    check_sampler(labels, 4, 0)
    check_sampler(labels, 7, 1)
    check_sampler(load_dataset('digits').y, 200, 2)


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=6), extra=st.integers(0, 9), seed=st.integers(0, 2**31))
def test_sampler_property(sizes, extra, seed):
    labels = torch.cat([torch.full((n,), k, dtype=torch.int64) for k, n in enumerate(sizes)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    check_sampler(labels, len(sizes) + extra, seed)


def test_sampler_reproducible_and_dataloader():
    y = load_dataset('digits').y
    a = list(ClassBalancedBatchSampler(y, 30, generator=torch.Generator().manual_seed(5)))
    b = list(ClassBalancedBatchSampler(y, 30, generator=torch.Generator().manual_seed(5)))
    c = list(ClassBalancedBatchSampler(y, 30, generator=torch.Generator().manual_seed(6)))
    assert a == b and a != c
    g = torch.Generator().manual_seed(5)
    s = ClassBalancedBatchSampler(y, 30, generator=g)
    e1, e2 = list(s), list(s)
    assert e1 != e2  # the generator advances: successive epochs differ
    assert list(ClassBalancedBatchSampler(y, 30, drop_last=True)).__len__() == len(y) // 30
    assert len(list(ClassBalancedBatchSampler(y, 30, n_batches=3))) == 3
    ds = load_dataset('digits')
    loader = torch.utils.data.DataLoader(ds, batch_sampler=ClassBalancedBatchSampler(ds.y, 20, generator=torch.Generator().manual_seed(0)))
    for xb, yb in loader:
        assert xb.shape == (20, 1, 8, 8) and torch.bincount(yb, minlength=10).tolist() == [2] * 10


def test_sampler_errors():
    with pytest.raises(ValueError, match=r'batch_size must be an int >= the number of classes \(3\)'):
        ClassBalancedBatchSampler([0, 1, 2, 2], 2)
    with pytest.raises(ValueError, match='labels'):
        ClassBalancedBatchSampler(torch.rand(5), 2)
    with pytest.raises(ValueError, match='labels'):
        ClassBalancedBatchSampler([], 2)
    with pytest.raises(ValueError, match='n_batches'):
        ClassBalancedBatchSampler([0, 1], 2, n_batches=-1)


def test_existing_archive_with_wrong_checksum_is_not_extracted(tmp_path, monkeypatch):
    root = tmp_path / 'data'
    root.mkdir()
    (root / 'cifar-10-python.tar.gz').write_bytes(b'not the archive')
    monkeypatch.setitem(D._RESOURCES, 'cifar10', {'url': (tmp_path / 'nowhere' / 'cifar-10-python.tar.gz').as_uri(), 'md5': '0' * 32,
                                                  'folder': 'cifar-10-batches-py'})
    with pytest.raises(CorruptDatasetError, match='md5 differs'):
        load_dataset('cifar10', root=root, download=True)
    assert not (root / 'cifar-10-batches-py').exists()


# ----------------------------------------------------------------------------------------------- shared io, duplicates
def test_atomic_write_is_io_and_honours_umask(tmp_path):
    import hyperlatent.io as HIO
    assert D.atomic_write is HIO.atomic_write  # one implementation, re-exported
    old = os.umask(0o022)
    try:
        with open(tmp_path / 'plain.bin', 'wb') as f:
            f.write(b'x')
        D.atomic_write(tmp_path / 'a.bin', lambda f: f.write(b'x'))
        write_idx(tmp_path / 'i.idx', np.zeros((2, 3), np.uint8))
        src = tmp_path / 'src.bin'
        src.write_bytes(b'payload')
        D.download_file(src.as_uri(), tmp_path / 'dl' / 'd.bin', md5=hashlib.md5(b'payload').hexdigest())
    finally:
        os.umask(old)
    want = (tmp_path / 'plain.bin').stat().st_mode & 0o777
    assert want == 0o644
    for p in ('a.bin', 'i.idx', 'dl/d.bin'):
        assert (tmp_path / p).stat().st_mode & 0o777 == want, p
    assert (tmp_path / 'dl' / 'd.bin').read_bytes() == b'payload'


def test_download_mismatch_leaves_nothing(tmp_path):
    src = tmp_path / 'src.bin'
    src.write_bytes(b'payload')
    (tmp_path / 'dl').mkdir()
    with pytest.raises(CorruptDatasetError, match='md5'):
        D.download_file(src.as_uri(), tmp_path / 'dl' / 'd.bin', md5='0' * 32)
    assert os.listdir(tmp_path / 'dl') == []


def _two_class_folder(root):
    for c, v in (('cat', 10), ('dog', 200)):
        for i in range(2):
            save_png(root / c / f'{i}.png', np.full((4, 4, 3), v, np.uint8))
    return root


def test_duplicate_class_names_rejected(tmp_path):
    root = _two_class_folder(tmp_path / 'f')
    assert len(load_image_folder(root, classes=['cat', 'dog'])) == 4
    with pytest.raises(ValueError, match=r"classes.*'cat'"):
        load_image_folder(root, classes=['cat', 'cat'])
    with pytest.raises(ValueError, match=r"classes.*'cat'"):
        LabeledDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), ['cat', 'cat'], 'n', 's', 'src')
    ds = load_image_folder(root)
    with pytest.raises(ValueError, match=r"classes.*'cat'"):
        select_classes(ds, ['cat', 'cat'])
    with pytest.raises(ValueError, match=r"classes.*'cat'"):
        select_classes(ds, ['cat', 0])  # the same class by name and by index
    # display names that collide are just as ambiguous
    with pytest.raises(ValueError, match=r"classes.*'pet'"):
        load_image_folder(root, class_names={'cat': 'pet', 'dog': 'pet'})


def test_cifar_meta_with_duplicate_names_rejected(tmp_path):
    rng = np.random.default_rng(0)
    folder, names, _ = make_cifar10(tmp_path, rng)
    dump(folder / 'batches.meta', {b'label_names': [b'cat'] * 10})
    with pytest.raises(ValueError, match=r"'cat'"):
        load_cifar_folder(folder)


def test_int_arguments_use_shared_checks(tmp_path):
    root = _two_class_folder(tmp_path / 'f')
    for bad in (True, 2.0, '4'):
        with pytest.raises(TypeError, match='image_size'):
            load_image_folder(root, image_size=bad)
        with pytest.raises(TypeError, match='n_per_class'):
            stratified_subsample(load_image_folder(root), bad)
    with pytest.raises(TypeError, match='batch_size'):
        ClassBalancedBatchSampler([0, 1], True)
    with pytest.raises(TypeError, match='n_batches'):
        ClassBalancedBatchSampler([0, 1], 2, n_batches=1.0)
    assert len(load_image_folder(root, image_size=np.int64(2)).x) == 4  # numpy ints are ints


# ----------------------------------------------------------------------------------------------- structured novelties
from hyperlatent.data import NOVELTY_KINDS, structured_novelties  # noqa: E402


def _imgs(n=24, c=1, h=6, w=6, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 17, size=(n, c, h, w)) / 16.0).float()


def test_novelties_shape_range_determinism():
    x = _imgs(c=2)
    for k in NOVELTY_KINDS:
        a = structured_novelties(x, k, seed=3)
        assert a.shape == x.shape and a.dtype == x.dtype and float(a.min()) >= 0 and float(a.max()) <= 1, k
        assert torch.equal(a, structured_novelties(x, k, seed=3)), k
        assert not torch.equal(a, x), k
    xs = x * 0.5 + 0.25  # another value range
    for k in NOVELTY_KINDS:
        a = structured_novelties(xs, k, seed=1, value_range=(0.25, 0.75))
        assert float(a.min()) >= 0.25 and float(a.max()) <= 0.75, k


def test_novelties_oracles():
    x = _imgs(n=30)
    xn = x.numpy()
    assert np.allclose(structured_novelties(x, 'inverted').numpy(), 1 - xn)
    rot = structured_novelties(x, 'rotated', seed=0).numpy()
    for r, o in zip(rot, xn):  # each is a 90 or 180 degree rotation (numpy's rot90 over the image axes)
        assert any(np.array_equal(r, np.rot90(o, k, axes=(1, 2))) for k in (1, 2))
    ov = structured_novelties(x, 'overlay', seed=0).numpy()
    for i in range(len(xn)):
        partners = [j for j in range(len(xn)) if j != i and np.allclose(ov[i], (xn[i] + xn[j]) / 2)]
        assert partners
    occ = structured_novelties(x, 'occluded', seed=0).numpy()
    for a, b in zip(occ, xn):  # one 3 x 3 mid-grey square, the rest unchanged
        ok = [(t, l) for t in range(4) for l in range(4)
              if np.all(a[:, t:t + 3, l:l + 3] == 0.5)
              and np.array_equal(np.where(np.pad(np.ones((3, 3)), ((t, 3 - t), (l, 3 - l)))[None] > 0, 0, a),
                                 np.where(np.pad(np.ones((3, 3)), ((t, 3 - t), (l, 3 - l)))[None] > 0, 0, b))]
        assert ok
    sn = structured_novelties(x, 'stroke_noise', seed=0, p=1.0).numpy()
    stroke = xn > 0.5
    assert np.all(np.isin(sn[stroke], [0.0, 1.0])) and np.array_equal(sn[~stroke], xn[~stroke])
    assert np.array_equal(structured_novelties(x, 'stroke_noise', p=0.0).numpy(), xn)


def test_novelties_non_square_rotation_is_180():
    x = _imgs(h=4, w=6)
    r = structured_novelties(x, 'rotated', seed=0).numpy()
    assert np.array_equal(r, np.rot90(x.numpy(), 2, axes=(2, 3)))


def test_novelties_bad_input():
    x = _imgs()
    with pytest.raises(ValueError, match='kind'):
        structured_novelties(x, 'mirror')
    with pytest.raises(ValueError, match='value_range'):
        structured_novelties(x * 3, 'inverted')
    with pytest.raises(ValueError, match='value_range'):
        structured_novelties(x, 'inverted', value_range=(1.0, 0.0))
    with pytest.raises(ValueError, match=r'\(n, C, H, W\)'):
        structured_novelties(x[:, 0], 'inverted')
    with pytest.raises(TypeError, match='x must be'):
        structured_novelties(x.numpy(), 'inverted')
    with pytest.raises(ValueError, match='seed'):
        structured_novelties(x, 'inverted', seed=-1)
    with pytest.raises(ValueError, match='overlay'):
        structured_novelties(x[:1], 'overlay')
