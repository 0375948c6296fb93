"""Build script: all package metadata comes from settings.ini (the nbdev 2 convention)."""
from configparser import ConfigParser

import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

requirements = cfg.get('requirements', '').split()
dev_requirements = cfg.get('dev_requirements', '').split()
licenses = {'apache2': 'Apache-2.0'}  # SPDX expression (setuptools deprecates License :: classifiers)
scripts = [s.strip() for s in cfg.get('console_scripts', '').split('\n') if s.strip()]

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    author=cfg['author'],
    author_email=cfg['author_email'],
    license=licenses[cfg['license']],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=['hyperlatent', 'hyperlatent.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements, 'ray': ['ray[default]>=2.9'],
                    'pyod': ['pyod>=2.0', 'combo>=0.1'],  # VAEDetector becomes a pyod BaseDetector; combo: pyod.models.combination
                    'faiss': ['faiss-cpu>=1.8'],  # knn backend='faiss' (exact after fp64 re-ranking)
                    'fid': ['torch-fidelity>=0.3']},  # Inception features of generate.InceptionFeatures
    python_requires='>=' + cfg['min_python'],
    zip_safe=False,
    entry_points={'console_scripts': scripts, 'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    classifiers=['Programming Language :: Python :: 3'],
    keywords=cfg['keywords'],
)
